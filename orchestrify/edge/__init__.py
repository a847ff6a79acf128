"""The edge: keeps Nginx pointed at exactly the healthy replicas, and measures requests.

Runs beside Nginx (not necessarily beside the controller): watches ``/v1/upstreams``,
renders ``templates/nginx/``, applies safely (test, atomic swap, reload, verify, roll
back) and turns Nginx's access log into Prometheus metrics on its own ``/metrics``.
"""

from orchestrify.edge.nginx import nginx_available
from orchestrify.edge.runner import Edge, EdgeSettings, run_edge

__all__ = ["Edge", "EdgeSettings", "nginx_available", "run_edge"]
