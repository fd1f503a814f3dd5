"""Text classifiers over token ids [N, L] (int, 0 = padding at the end), built from torch.nn layers.

`transformer_encoder`: token + learned position embeddings, a pre-norm nn.TransformerEncoder with
a padding mask, mean pooling over real tokens. `lstm`: a bidirectional LSTM over packed sequences
(padding never enters the recurrence), the last forward and backward states concatenated.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from bigmodel_cli.models.registry import register_model


class TextTransformer(nn.Module):
    def __init__(self, vocab_size: int, max_length: int, num_classes: int, d_model: int, num_heads: int,
                 num_layers: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.position = nn.Parameter(torch.zeros(1, max_length, d_model))
        nn.init.trunc_normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, dim_feedforward, dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        pad = ids == 0
        pad = torch.cat([torch.zeros_like(pad[:, :1]), pad[:, 1:]], dim=1)  # an empty text still has one slot
        h = self.embed(ids) + self.position[:, : ids.shape[1]]
        h = self.encoder(h, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        pooled = (h * keep).sum(dim=1) / keep.sum(dim=1)
        return self.head(self.norm(pooled))


class TextLSTM(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, embed_dim: int, hidden: int, num_layers: int,
                 dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers, batch_first=True, bidirectional=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        lengths = (ids != 0).sum(dim=1).clamp(min=1)
        packed = pack_padded_sequence(self.embed(ids), lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return self.head(self.dropout(torch.cat([h[-2], h[-1]], dim=1)))


@register_model("transformer_encoder", kinds=("text",))
def transformer_encoder(num_classes: int, input_shape: list[int], vocab_size: int, d_model: int = 128,
                        num_heads: int = 4, num_layers: int = 2, dim_feedforward: int = 256,
                        dropout: float = 0.1) -> nn.Module:
    """Transformer encoder for text (torch.nn layers, padding mask, mean pooling)."""
    return TextTransformer(vocab_size, input_shape[0], num_classes, d_model, num_heads, num_layers, dim_feedforward,
                           dropout)


@register_model("lstm", kinds=("text",))
def lstm(num_classes: int, input_shape: list[int], vocab_size: int, embed_dim: int = 128, hidden: int = 128,
         num_layers: int = 1, dropout: float = 0.1) -> nn.Module:
    """Bidirectional LSTM for text over packed sequences."""
    return TextLSTM(vocab_size, num_classes, embed_dim, hidden, num_layers, dropout)
