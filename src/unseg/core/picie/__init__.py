"""PiCIE (Cho et al., CVPR 2021): clustering with photometric invariance and geometric equivariance.

network (ResNet + light FPN), views (per-image, per-epoch view parameters), clustering (per-view k-means with a
bounded sample, mini-batch centroid pass, label pass), loss (frozen cosine classifiers, within + cross CE), train
(epoch loop, checkpoints, resume), monitor (val monitoring, final-evaluation k-means), inference (features).
"""

from unseg.core.picie.clustering import ClusterConfig, ClusterResult, assign_labels, cluster_view, update_centroids
from unseg.core.picie.inference import ImageSource, PiCIEFeatureStream, state_fingerprint
from unseg.core.picie.loss import CLASS_WEIGHTS, LossConfig, class_weights, picie_loss
from unseg.core.picie.monitor import EvalConfig, ValMonitor
from unseg.core.picie.network import NetworkConfig, PiCIENet, build_network
from unseg.core.picie.train import TrainConfig, TrainResult, train_picie
from unseg.core.picie.views import ViewConfig, ViewParams, draw_view_params, transform_features, view_input

__all__ = [
    "CLASS_WEIGHTS", "ClusterConfig", "ClusterResult", "EvalConfig", "ImageSource", "LossConfig", "NetworkConfig",
    "PiCIEFeatureStream", "PiCIENet", "TrainConfig", "TrainResult", "ValMonitor", "ViewConfig", "ViewParams",
    "assign_labels", "build_network", "class_weights", "cluster_view", "draw_view_params", "picie_loss",
    "state_fingerprint", "train_picie", "transform_features", "update_centroids", "view_input",
]
