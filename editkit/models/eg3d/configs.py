"""Official EG3D configurations, as the keyword arguments EG3D's `train.py` passes to the network classes."""

FFHQ512_NEURAL_RENDERING_RESOLUTION = 128  # what the FFHQ 512 model was trained (and is rendered) at


def rendering_kwargs(image_resolution=512, superresolution_module="training.superresolution.SuperresolutionHybrid8XDC",
                     **overrides):
    """`rendering_kwargs` of `train.py --cfg=ffhq --gen_pose_cond=True` (the README's FFHQ recipe), updated."""
    kwargs = dict(
        image_resolution=image_resolution, disparity_space_sampling=False, clamp_mode="softplus",
        superresolution_module=superresolution_module, c_gen_conditioning_zero=False, gpc_reg_prob=0.5, c_scale=1.0,
        superresolution_noise_mode="none", density_reg=0.25, density_reg_p_dist=0.004, reg_type="l1",
        decoder_lr_mul=1.0, sr_antialias=True, depth_resolution=48, depth_resolution_importance=48, ray_start=2.25,
        ray_end=3.3, box_warp=1, avg_camera_radius=2.7, avg_camera_pivot=[0, 0, 0.2])
    kwargs.update(overrides)
    return kwargs


def ffhq512_kwargs():
    """`TriPlaneGenerator` arguments of the FFHQ 512 model (ffhq512-128.pkl): 30.7M parameters."""
    return dict(
        z_dim=512, c_dim=25, w_dim=512, img_resolution=512, img_channels=3, sr_num_fp16_res=4,
        mapping_kwargs=dict(num_layers=2), rendering_kwargs=rendering_kwargs(),
        sr_kwargs=dict(channel_base=32768, channel_max=512, fused_modconv_default="inference_only"),
        channel_base=32768, channel_max=512, fused_modconv_default="inference_only", num_fp16_res=0, conv_clamp=None)


def ffhq512_discriminator_kwargs():
    """`DualDiscriminator` arguments of the FFHQ 512 model."""
    return dict(
        c_dim=25, img_resolution=512, img_channels=3, channel_base=32768, channel_max=512, num_fp16_res=4,
        conv_clamp=256, disc_c_noise=0, block_kwargs=dict(freeze_layers=0), mapping_kwargs={},
        epilogue_kwargs=dict(mbstd_group_size=4))
