"""IPU support: tile planning (runs anywhere) and the tensorflow-ipu hook.

``planner`` is plain Python and is used by the host tests of the Poplar
codelets. ``backend`` needs Graphcore's tensorflow-ipu and the Poplar SDK at
run time and raises ``IpuUnavailableError`` without them; importing it is
always safe. Models reach both through ``snn_runner.backend``.
"""

from snn_runner.ipu.backend import IpuUnavailableError, require_ipu
from snn_runner.ipu.planner import IpuTarget, NetworkDoesNotFitError, NetworkPlan, plan_network

__all__ = [
    "IpuTarget",
    "IpuUnavailableError",
    "NetworkDoesNotFitError",
    "NetworkPlan",
    "plan_network",
    "require_ipu",
]
