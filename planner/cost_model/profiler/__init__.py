"""`planner profile`'s machinery: measure this machine into a HardwareProfile.

Modules: measure.py (kernels, layers, decode steps), collectives.py
(torch.distributed groups), fit.py (peaks, link tiers, overheads), run.py
(the plan of sizes and the order). torch is imported inside functions only,
so importing this package costs nothing.
"""

from planner.cost_model.profiler.run import Plan, plan_for, profile_machine, write_profile

__all__ = ["Plan", "plan_for", "profile_machine", "write_profile"]
