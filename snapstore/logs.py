"""What snapstore tells operators, through the stdlib `logging` module.

Every logger is a child of ``snapstore`` (``snapstore.store``, ``.pool``, ``.migrate``,
``.claims``, ``.events``), and each record carries its facts as extras
(``instance_id``, ``version``, ``schema``, ``duration_ms``...) for structured handlers.
Levels: WARNING for what needs a look (slow statements, lost connections, reconnects,
poison items), INFO for what an operator may want to follow (migrations, lost claims,
retries), DEBUG for the normal refusals of optimistic concurrency (conflicts). A healthy
hot path logs nothing at INFO.
"""

from __future__ import annotations

import logging
from typing import Final

store: Final = logging.getLogger("snapstore.store")
pool: Final = logging.getLogger("snapstore.pool")
migrations: Final = logging.getLogger("snapstore.migrate")

SLOW_STATEMENT: Final = 1.0
"""Seconds after which a statement is logged as slow (``slow_statement`` option)."""
