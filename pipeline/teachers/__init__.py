"""Teachers that pseudo-label photos, behind one interface (``base.Teacher``), and their fusion.

- ``base``: the interface (a person probability per image at its own size) and flip TTA;
- ``registry``: the teachers ``pseudo_label`` runs by name (``deeplab``, ``mediapipe``,
  ``mediapipe_landscape``, ``mediapipe_pose``);
- ``fusion``: fusing several teachers' probabilities and their agreement;
- ``deeplab``: the paper's DeepLabv3+ teacher (trained in-pipeline by ``train_teacher``) and its batched runner;
- ``mediapipe`` / ``tflite``: MediaPipe's pretrained selfie segmenter in PyTorch, no download;
- ``mediapipe_pose``: the person mask of MediaPipe's pose model, on the same PyTorch port.
"""
