"""The ``python`` tool: a program run in reasonrl's sandbox (``reasonrl.sandbox``), one fresh
jail per call, with the sandbox's isolation, a wall-clock deadline and an output cap.

Nothing persists between calls (each is a new interpreter in a new jail): a program that needs
an earlier result computes it again. A program past its deadline is a ``timeout``
observation; one that prints past the cap is killed and its output's start returned; a crash
returns its exit status and stderr. Runs in this process's jails (root, as the ``code`` reward)
or on a sandbox server at ``url``.
"""

from __future__ import annotations

from collections.abc import Callable

from reasonrl.sandbox import Limits, RunCodeRequest, Sandbox, SandboxClient, sandbox_executor
from reasonrl.sandbox.client import SandboxUnavailable


def python_tool(
    timeout_s: float, output_chars: int, url: str | None = None, token: str | None = None
) -> Callable[[str], str]:
    """The ``python`` tool with its deadline and output cap: the jail is killed once stdout or
    stderr passes 4 × ``output_chars`` bytes (the toolbox keeps ``output_chars`` characters)."""
    if url:
        executor: Sandbox | SandboxClient = sandbox_executor(url, token, "python tool")
    else:
        sandbox_executor(None, None, "python tool")  # the ConfigError where jails cannot run
        executor = Sandbox(Limits(timeout_s=timeout_s, output_bytes=4 * output_chars))

    def python(code: str) -> str:
        """Run a Python program and return what it prints.

        Args:
            code: the program; print the values you need
        """
        try:
            response = executor.run_code(RunCodeRequest(code=code, run_timeout=timeout_s))
        except SandboxUnavailable as e:
            raise RuntimeError(f"sandbox unavailable: {e}") from None
        result = response.run_result
        if result is None:
            raise RuntimeError(f"the sandbox could not run it: {response.message}")
        if result.status == "TimeLimitExceeded":
            raise TimeoutError(f"the program ran past {timeout_s:g} s")
        text = result.stdout + result.stderr
        # the note first: the toolbox keeps an observation's start
        if response.message:  # output over the cap, killed
            text = f"[{response.message}]\n{text}"
        elif result.return_code:
            text = f"[exit status {result.return_code}]\n{text}"
        return text

    return python
