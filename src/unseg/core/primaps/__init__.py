"""PriMaPs-EM (Hahn et al., TMLR 2024): principal mask proposals from frozen features, fitted with a moving-average
stochastic EM (see docs/methods.md of the shared docs).

- `proposals`: the batched principal-mask loop on feature grids; `postprocess`: median filter, background, log-softmax;
  `crf`: DenseCRF; `masks`: the label-map stream over a split.
- `prototypes`: the weight-normalised prototypes and their initialisation; `em`: E-step, M-step loss, EMA teacher;
  `augment` and `sources`: what the student and the teacher see; `train`: the checkpointed training loop;
  `predict`: val predictions and monitoring scores; `checkpoint`, `config`, `preview`: plumbing.
"""

from unseg.core.primaps.crf import CRFConfig, dense_crf
from unseg.core.primaps.em import ema_decay, focal_weights, mask_mode_labels
from unseg.core.primaps.masks import ProposalStream, proposal_label_maps, proposal_stats
from unseg.core.primaps.predict import PrototypePredictionStream, val_scores
from unseg.core.primaps.proposals import ProposalConfig, Proposals, Stop, propose_masks
from unseg.core.primaps.prototypes import Prototypes, principal_init
from unseg.core.primaps.train import EMConfig, EMData, EMResult, fit_em

__all__ = [
    "CRFConfig", "EMConfig", "EMData", "EMResult", "ProposalConfig", "ProposalStream", "Proposals",
    "PrototypePredictionStream", "Prototypes", "Stop", "dense_crf", "ema_decay", "fit_em", "focal_weights",
    "mask_mode_labels", "principal_init", "proposal_label_maps", "proposal_stats", "propose_masks", "val_scores",
]
