"""The model-file wing: loading files that may be hostile. Keras archives are vetted before
Keras reads them (`load`, `check`), weights files in a child process with a deadline
(`weights`, `h5probe`); exported .onnx / .tflite files run in their own runtimes without
TensorFlow (`exported`)."""
