"""Hyper-parameter search over recipe keys with Optuna: each trial a real `bigmodel train` subprocess.

    bigmodel tune -r digits-cnn --space space.yaml --trials 30 --prune median
"""
