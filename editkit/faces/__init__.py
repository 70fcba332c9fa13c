"""Real photos in: face detection, 68 landmarks, EG3D-framed alignment and the camera of the crop.

    from editkit.faces import prepare_face
    from editkit.images import load_image
    face = prepare_face(load_image("photo.jpg"), resolution=128)
    face.image, face.label, face.yaw_pitch   # the aligned crop, its EG3D label (25,), yaw/pitch in degrees

Modules: detect (MTCNN, dlib HOG fallback), landmarks (dlib 68), align (the crop), camera (PnP -> EG3D label),
pipeline (all of them in a row). The recipe and its accuracy: docs/faces.md.
"""

from editkit.faces.align import Alignment, align_face
from editkit.faces.camera import estimate_camera
from editkit.faces.detect import Face, detect_faces
from editkit.faces.landmarks import landmarks68
from editkit.faces.pipeline import photo_files, prepare_face

__all__ = ["Alignment", "Face", "align_face", "detect_faces", "estimate_camera", "landmarks68", "photo_files",
           "prepare_face"]
