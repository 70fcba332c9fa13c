"""editkit: fast 3D-aware face editing with a distilled convolutional student of an EG3D teacher."""

__version__ = "0.1.0"
