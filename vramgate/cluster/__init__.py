"""vramgate past one machine: a node gate per node on Ray, and routers that rank nodes by expected completion.

Each node's gate alone reserves that node's memory; routers only route (and may be declined), so a stale view
costs a decline or a wait, never memory. The sans-io parts (:mod:`vramgate.cluster.routing`) import no Ray; the
Ray parts (:mod:`vramgate.cluster.node`, :mod:`vramgate.cluster.router`, :mod:`vramgate.cluster.serve`) need
``pip install -e '.[ray]'``.
"""

from vramgate._quote import Declined as Declined  # what Gate.submit_or_decline raises

__all__ = ["Declined"]
