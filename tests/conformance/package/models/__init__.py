from .layers import *
from .small import SmallNet
from .tiny import tiny_net
