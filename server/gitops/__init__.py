"""Configuration as code: ``authmount apply`` and ``authmount export``, and the seeding of a
server from its settings file (apply without prune).

``desired`` validates a file into normalised objects, ``live`` reads and writes a server
(over HTTP, or the running application), ``plan`` compares and applies, ``export`` writes a
server's state as a file. See docs/configuration.md, "Configuration as code".
"""

from server.gitops.desired import Desired, GitopsError, from_sections, from_settings, load_file
from server.gitops.export import Export, dump_yaml, export_state
from server.gitops.live import AppServer, HttpServer, Server, ServerError
from server.gitops.plan import Change, Plan, Target, apply_plan, make_plan, parse_target

__all__ = [
    "AppServer",
    "Change",
    "Desired",
    "Export",
    "GitopsError",
    "HttpServer",
    "Plan",
    "Server",
    "ServerError",
    "Target",
    "apply_plan",
    "dump_yaml",
    "export_state",
    "from_sections",
    "from_settings",
    "load_file",
    "make_plan",
    "parse_target",
]
