"""Distillation of an EG3D teacher into a fast pose-conditioned convolutional student (and the PC-GAN baseline).

`python -m training.distill --help`; docs/student.md describes the method, the files and the commands.
"""
