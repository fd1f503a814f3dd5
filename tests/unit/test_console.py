"""Human output is plain text: square brackets in a message are printed, not read as rich styles."""

from __future__ import annotations

from bigmodel_cli import console


def test_info_and_warn_print_square_brackets(capsys, monkeypatch):
    monkeypatch.setattr(console, "_quiet", False)  # an earlier --json command in this process may have set it
    console.info("install it: pip install 'bigmodel-cli[hf]'")
    console.warn("augment [translation] and [bold]not a style")
    err = capsys.readouterr().err
    assert "pip install 'bigmodel-cli[hf]'" in err
    assert "warning: augment [translation] and [bold]not a style" in err
