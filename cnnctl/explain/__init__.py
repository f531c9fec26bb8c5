"""What a network looked at: Grad-CAM, Grad-CAM++, saliency, input x gradient and occlusion
maps, the layer
they are read at, feature maps, and the figures that show them.

Below `scoring` (which resolves models and images and calls these) and above `model`.
TensorFlow is imported inside the gradient methods only: occlusion runs exported
.onnx / .tflite files without it.
"""

from __future__ import annotations

METHODS = ("gradcam", "gradcam++", "saliency", "input-x-gradient", "occlusion")
GRADIENT_METHODS = ("gradcam", "gradcam++", "saliency", "input-x-gradient")
LAYER_METHODS = ("gradcam", "gradcam++")  # read at a convolutional layer
FORMATS = ("png", "npy", "json")  # what `explain --format` writes beside the overlay PNG
