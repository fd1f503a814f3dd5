"""Compression of trained runs: structured pruning (`prune`, on Torch-Pruning) and the recorded architecture
of a pruned network (`architecture`). Distillation is a training option (`training.distill`), and
quantisation an export option (`export --quantize int8|fp16`).

    bigmodel prune runs/digits-cnn --ratio 0.5 --finetune-epochs 3 --teacher runs/digits-cnn
    bigmodel benchmark runs/digits-cnn runs/digits-cnn-pruned
"""
