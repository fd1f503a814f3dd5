"""`python -m bigmodel_cli ...` is the same as `bigmodel ...`."""

from bigmodel_cli.cli.app import main

if __name__ == "__main__":
    main()
