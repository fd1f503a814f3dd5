"""The shipped recipes (YAML), installed as bigmodel_cli._recipes; see `bigmodel recipes list`."""
