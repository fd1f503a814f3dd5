"""Running a trained model on inputs: a checkpoint in PyTorch or an exported ONNX file, batch by batch.

    model = load_predictor(run, checkpoint="last")              # inference.predictor
    model = load_predictor(run, onnx=Path("runs/x/model.onnx"))
    outputs = model.predict(x, batch_size=1024)                 # raw logits / predictions, float32 [N, K]

Used by `bigmodel eval` (and `bigmodel predict`, planned). `session.create_session` is the one place an
onnxruntime session is made. Import the submodules (`inference.predictor`, `inference.batch`,
`inference.onnx_model`, `inference.session`): this package imports nothing itself, so `bigmodel --help`
and modules that need only `softmax` stay light.
"""
