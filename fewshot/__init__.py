"""Stage 2 of sact: few-shot episodes, the SA-CT model and its baselines, training and evaluation.

Everything here works on cached features read from a feature store; nothing imports the video
decoder or the backbone.
"""

from sact.fewshot.baselines import TRX as TRX
from sact.fewshot.baselines import ProtoNet as ProtoNet
from sact.fewshot.baselines import ProtoNetEmbedding as ProtoNetEmbedding
from sact.fewshot.baselines import TRXEmbedding as TRXEmbedding
from sact.fewshot.model import SACT as SACT
from sact.fewshot.model import SACTEmbedding as SACTEmbedding
from sact.fewshot.model import VideoEmbedding as VideoEmbedding

# model kinds by name, so training can rebuild a model from (kind, model.config())
MODELS = {"sact": SACT, "protonet": ProtoNet, "trx": TRX}
