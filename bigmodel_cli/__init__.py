"""bigmodel-cli: one recipe from raw data to a served endpoint.

    bigmodel prepare-data -r digits-cnn && bigmodel train -r digits-cnn
    bigmodel eval runs/digits-cnn && bigmodel export runs/digits-cnn
"""

__version__ = "0.1.0"
