"""The ONNX scorer: the serving artefact shared by training and the stream."""
