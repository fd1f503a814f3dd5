"""Export-friendly equivalents of layers that neither ONNX exporter can take.

    net = portable(net)        # same outputs, graph the exporters understand

`TextLSTM` runs a bidirectional LSTM over packed sequences (`pack_padded_sequence` with
`enforce_sorted=False`): the dynamo exporter rejects it and the TorchScript exporter crashes.
`PortableTextLSTM` computes the same thing with plain unidirectional LSTMs: the forward
direction runs over the padded ids (padding is at the end, so the state at the last real
token is unaffected), the backward direction runs over each text reversed within its own
length, and the states at position `length - 1` are gathered. The weights are shared with
the trained module, so nothing is retrained or approximated.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _direction(lstm: nn.LSTM, layer: int, suffix: str) -> nn.LSTM:
    """One direction of one layer of `lstm` as its own unidirectional, single-layer nn.LSTM."""
    size = lstm.input_size if layer == 0 else 2 * lstm.hidden_size
    single = nn.LSTM(size, lstm.hidden_size, 1, batch_first=True, bias=lstm.bias)
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if lstm.bias else [])
    for name in names:
        getattr(single, f"{name}_l0").data.copy_(getattr(lstm, f"{name}_l{layer}{suffix}").data)
    return single


class PortableTextLSTM(nn.Module):
    """`TextLSTM` without packed sequences: the same logits for ids padded with 0 at the end."""

    def __init__(self, src: nn.Module):
        super().__init__()
        self.embed, self.head = src.embed, src.head
        self.forward_layers = nn.ModuleList(_direction(src.lstm, k, "") for k in range(src.lstm.num_layers))
        self.backward_layers = nn.ModuleList(_direction(src.lstm, k, "_reverse")
                                             for k in range(src.lstm.num_layers))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        lengths = (ids != 0).sum(dim=1).clamp(min=1).unsqueeze(1)  # [N, 1]
        steps = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)  # [1, L]
        reverse = torch.where(steps < lengths, lengths - 1 - steps, steps)  # reverses each text within its length
        last = (lengths - 1).unsqueeze(2)  # [N, 1, 1]
        x = self.embed(ids)
        for fwd, bwd in zip(self.forward_layers, self.backward_layers, strict=True):
            index = reverse.unsqueeze(2).expand(-1, -1, x.shape[2])
            out_f, _ = fwd(x)
            out_b_reversed, _ = bwd(torch.gather(x, 1, index))
            h_f = torch.gather(out_f, 1, last.expand(-1, -1, out_f.shape[2])).squeeze(1)
            h_b = torch.gather(out_b_reversed, 1, last.expand(-1, -1, out_b_reversed.shape[2])).squeeze(1)
            back_index = reverse.unsqueeze(2).expand(-1, -1, out_b_reversed.shape[2])
            x = torch.cat([out_f, torch.gather(out_b_reversed, 1, back_index)], dim=2)
        return self.head(torch.cat([h_f, h_b], dim=1))


def portable(net: nn.Module) -> nn.Module:
    """A copy of `net` (eval mode) with every `TextLSTM` replaced by `PortableTextLSTM`; `net` is untouched."""
    from bigmodel_cli.models.text import TextLSTM

    if isinstance(net, TextLSTM):
        return PortableTextLSTM(net).eval()
    if not any(isinstance(m, TextLSTM) for m in net.modules()):
        return net
    net = copy.deepcopy(net)
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, TextLSTM):
                setattr(parent, name, PortableTextLSTM(child).eval())
    return net.eval()
