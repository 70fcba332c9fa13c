"""Networks: the EG3D teacher port (`editkit.models.eg3d`) and the student."""
