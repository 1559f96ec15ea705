"""The core is pure Python: it must import and schedule with torch and numpy unavailable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_core_imports_with_torch_and_numpy_blocked() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None
        sys.modules["numpy"] = None
        import ember.core
        import ember.core.block_pool, ember.core.config, ember.core.kv_cache_manager
        import ember.core.outputs, ember.core.prefix_cache, ember.core.request
        import ember.core.request_queue, ember.core.scheduler
        scheduler = ember.core.Scheduler()
        scheduler.add_request(ember.core.Request("a", [1, 2, 3]))
        assert scheduler.schedule().num_scheduled_tokens == 3
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "numpy"))
        assert all(sys.modules[m] is None for m in loaded), loaded
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
