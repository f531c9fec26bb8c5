"""The allow-lists: the Keras classes a config may build and a model file may name. Nothing else.

One home for both, so that the builder and the model-file check never disagree.
"""

from __future__ import annotations

# Layers that fit a Sequential image classifier and take only plain values.
LAYERS = (
    # convolution
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "Conv2DTranspose",
    "Conv3DTranspose",
    "DepthwiseConv2D",
    "SeparableConv1D",
    "SeparableConv2D",
    # pooling
    "MaxPooling1D",
    "MaxPooling2D",
    "MaxPooling3D",
    "AveragePooling1D",
    "AveragePooling2D",
    "AveragePooling3D",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "MaxPool2D",
    "AvgPool2D",
    # core, reshaping, regularization
    "Dense",
    "Activation",
    "Flatten",
    "Reshape",
    "Permute",
    "Identity",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianDropout",
    "GaussianNoise",
    "AlphaDropout",
    "ActivityRegularization",
    "Cropping2D",
    "ZeroPadding2D",
    "UpSampling2D",
    # normalization and activations
    "BatchNormalization",
    "LayerNormalization",
    "GroupNormalization",
    "UnitNormalization",
    "ReLU",
    "LeakyReLU",
    "PReLU",
    "ELU",
    "Softmax",
    # image preprocessing and augmentation (active in training only where Keras says so)
    "Rescaling",
    "Resizing",
    "CenterCrop",
    "RandomCrop",
    "RandomFlip",
    "RandomRotation",
    "RandomTranslation",
    "RandomZoom",
    "RandomContrast",
    "RandomBrightness",
)

# Image augmentation: active only while training (Keras turns them off in evaluate and predict).
AUGMENTATIONS = (
    "RandomFlip",
    "RandomRotation",
    "RandomTranslation",
    "RandomZoom",
    "RandomContrast",
    "RandomBrightness",
    "RandomCrop",
    "GaussianNoise",
)

# Augmentation that moves pixels: for masks (segmentation) it runs in the input pipeline on
# the image and its mask together, with nearest-neighbour sampling, instead of in the model.
GEOMETRIC = ("RandomFlip", "RandomRotation", "RandomTranslation", "RandomZoom")

OPTIMIZERS = (
    "SGD",
    "RMSprop",
    "Adam",
    "AdamW",
    "Adadelta",
    "Adagrad",
    "Adamax",
    "Adafactor",
    "Nadam",
    "Ftrl",
    "Lion",
    "Lamb",
)

# Classes inside saved blocks beyond LAYERS: the shortcut's Add, and what the
# applications are made of. The model-file allow-list takes these too.
MODEL_FILE_CLASSES = ("Add", "Multiply", "Concatenate", "Normalization", "InputLayer")

# cnnctl's own classes a saved model may name in its compile config: (module, registered
# name). Code shipped with cnnctl that takes only numbers; nothing else outside Keras loads.
OWN_OBJECTS = {("cnnctl.tasks.pixel_loss", "cnnctl>PixelLoss")}

# Augmentation layers that pass images through unchanged at inference (RandomCrop does not: it
# crops the centre). Left out of the exported graph, where their random ops have no ONNX form.
INFERENCE_IDENTITY = (  # a subset of the augmentations above, and noise
    "RandomFlip",
    "RandomRotation",
    "RandomTranslation",
    "RandomZoom",
    "RandomContrast",
    "RandomBrightness",
    "GaussianNoise",
)
