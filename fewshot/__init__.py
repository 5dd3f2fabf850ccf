"""Stage 2 of sact: few-shot episodes, the SA-CT model and its baselines, training and evaluation.

Everything here works on cached features read from a feature store; nothing imports the video
decoder or the backbone.
"""

from fewshot.baselines import TRX as TRX
from fewshot.baselines import ProtoNet as ProtoNet
from fewshot.baselines import ProtoNetEmbedding as ProtoNetEmbedding
from fewshot.baselines import TRXEmbedding as TRXEmbedding
from fewshot.model import SACT as SACT
from fewshot.model import SACTEmbedding as SACTEmbedding
from fewshot.model import VideoEmbedding as VideoEmbedding

# model kinds by name, so training can rebuild a model from (kind, model.config())
MODELS = {"sact": SACT, "protonet": ProtoNet, "trx": TRX}
