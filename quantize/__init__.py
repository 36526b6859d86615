"""Quantizing a target + drafter pair: one recipe, applied the same way to the .pte and the ONNX graphs.

    recipes    the `--quantize` syntax (per model and per module: 8da4w, 8da8w, int4, emb4, emb8, group
               sizes) parsed into a PairRecipe, and each format's default recipe, chosen by measurement
    modules    torchao on the PyTorch modules (the ExecuTorch path): quantize a pair in place, untie a
               tied LM head, refuse what ExecuTorch/XNNPACK cannot run
    streaming  quantize while loading, for both formats: weights quantized from row chunks as the
               checkpoint streams in, so an fp32 model is never whole in memory
    nbits      onnxruntime's block-quantized layouts (MatMulNBits, GatherBlockQuantized) as torch
               modules over custom ops (the ONNX path): the graph is exported from them, so it holds
               the .pte's own integers and scales and never an fp32 copy
    qat        quantization-aware fine-tuning: a target whose published weights lie on the recipe's grid

export.settings.ExportSettings.quantize chooses the recipe of an export ("default", "none" or a recipe).
"""
