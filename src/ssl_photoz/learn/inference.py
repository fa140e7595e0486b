"""The one inference loop: a network over a dataset of cut-outs, in eval mode, under a precision.

Prediction (``evaluate.predict``), the embedding probe (``evaluate.probe``), the embeddings of the
similarity search (``similarity.embeddings``) and the validation inside training
(``learn.classifier``) all run their networks through ``run_network``: centre crops of the
model's crop size, no augmentation, no gradients, channels_last on the device, the network under
the precision's autocast. What each keeps of the outputs (a PDF, E(z), features) is its own
``head`` function, run outside autocast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from ssl_photoz.learn import augment
from ssl_photoz.learn.precision import Precision
from ssl_photoz.learn.runtime import to_device


def eval_batches(
    network: nn.Module,
    dataset,
    device: torch.device,
    precision: Precision,
    *,
    crop_size: int,
    batch_size: int = 256,
    head: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[tuple[dict, torch.Tensor]]:
    """Yield (batch, outputs) for each batch of ``dataset`` in order: ``network`` (put in eval
    mode) on the centre crops under ``precision``'s autocast, then ``head`` (default: the
    outputs made fp32) outside it. ``batch`` is the loader's dict (``index``, ``z``, ...)."""
    network.eval()
    crop = augment.EvalTransform(crop_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with torch.no_grad():
        for batch in loader:
            with precision.autocast():
                out = network(crop(to_device(batch["image"], device)))
            yield batch, (out.float() if head is None else head(out.float()))


def run_network(
    network: nn.Module,
    dataset,
    device: torch.device,
    precision: Precision,
    *,
    crop_size: int,
    batch_size: int = 256,
    head: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The outputs of ``eval_batches`` for the whole dataset, concatenated on the CPU."""
    parts = [
        out.cpu()
        for _, out in eval_batches(
            network,
            dataset,
            device,
            precision,
            crop_size=crop_size,
            batch_size=batch_size,
            head=head,
        )
    ]
    return torch.cat(parts)
