"""Pure-PyTorch port of NVlabs' EG3D networks (official arguments, state-dict keys and outputs).

`OFFICIAL_CLASSES` maps the dotted class names of EG3D configs and pickles to the port's classes; checkpoint
loaders build networks from it and the pickled `_init_kwargs`. docs/teacher_port.md describes the port.
"""

from editkit.models.eg3d.discriminator import DualDiscriminator, blur, filtered_resizing
from editkit.models.eg3d.layers import EG3DError, Generator, MappingNetwork, SynthesisNetwork
from editkit.models.eg3d.renderer import ImportanceRenderer, MipRayMarcher2, RaySampler, generate_planes
from editkit.models.eg3d.superresolution import (SUPERRESOLUTION_CLASSES, SuperresolutionHybrid2X,
                                                 SuperresolutionHybrid4X, SuperresolutionHybrid8X,
                                                 SuperresolutionHybrid8XDC)
from editkit.models.eg3d.triplane import OSGDecoder, TriPlaneGenerator

OFFICIAL_CLASSES = {
    "training.triplane.TriPlaneGenerator": TriPlaneGenerator,
    "training.dual_discriminator.DualDiscriminator": DualDiscriminator,
    **SUPERRESOLUTION_CLASSES,
}

__all__ = [
    "OFFICIAL_CLASSES", "SUPERRESOLUTION_CLASSES", "DualDiscriminator", "EG3DError", "Generator", "ImportanceRenderer",
    "MappingNetwork", "MipRayMarcher2", "OSGDecoder", "RaySampler", "SuperresolutionHybrid2X",
    "SuperresolutionHybrid4X", "SuperresolutionHybrid8X", "SuperresolutionHybrid8XDC", "SynthesisNetwork",
    "TriPlaneGenerator", "blur", "filtered_resizing", "generate_planes",
]
