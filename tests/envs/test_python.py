"""The python tool on this machine's jails (root, as the sandbox's own tests): what a hostile
call does ends as an observation, and the next call runs."""

import time

import pytest

from reasonrl.envs import Toolbox
from reasonrl.envs.protocol import ToolCall
from reasonrl.envs.python import python_tool


@pytest.fixture(scope="module")
def box() -> Toolbox:
    return Toolbox([python_tool(timeout_s=2.0, output_chars=200)], output_chars=200)


def test_a_program_s_output_is_the_answer(box):
    observation = box.call(ToolCall("python", "print(6 * 7)"))
    assert observation.text == "42\n" and observation.error is None


@pytest.mark.parametrize(
    ("code", "starts"),
    [
        ("import os\nos._exit(3)", "[exit status 3]"),
        ("exit(0)\nprint('after')", ""),
        ("raise SystemExit('bye')", "[exit status 1]\nbye"),
        ("1/0", "[exit status 1]\nTraceback"),
        ("while True:\n    print('x' * 100)", "[output exceeded 800 bytes; killed]"),
    ],
)
def test_hostile_programs_end_as_observations(box, code, starts):
    observation = box.call(ToolCall("python", code))
    assert observation.error is None and observation.text.startswith(starts)
    assert len(observation.text) <= 200 + len("... [100000 more characters]")


def test_a_fork_bomb_and_a_runaway_loop_end_and_the_next_call_runs(box):
    start = time.monotonic()
    loop = box.call(ToolCall("python", "while True:\n    pass"))
    assert loop.error == "timeout" and loop.text.startswith("error: timeout")
    # each fork past the process limit fails and prints a traceback: killed at the output cap,
    # or at the deadline, whichever comes first
    bomb = box.call(ToolCall("python", "import os\nwhile True:\n    os.fork()"))
    assert bomb.error == "timeout" or bomb.text.startswith("[output exceeded 800 bytes; killed]")
    assert time.monotonic() - start < 15
    assert box.call(ToolCall("python", "print('still here')")).text == "still here\n"


def test_rollout_tool_sandbox_url_runs_the_tool_on_a_sandbox_server(tmp_path):
    import threading

    import uvicorn

    from reasonrl.config import RolloutConfig
    from reasonrl.envs import ToolUse
    from reasonrl.sandbox import Sandbox
    from reasonrl.sandbox.server import create_app

    class Counted(Sandbox):
        runs = 0

        def run_code(self, request):  # noqa: ANN001, ANN202
            Counted.runs += 1
            return super().run_code(request)

    app = create_app(Counted(base_dir=tmp_path), 1, 8, None)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    try:
        ro = RolloutConfig(max_turns=2, tools=["python"], tool_sandbox_url=url)
        (tool,) = ToolUse.from_config(ro).tools
        assert tool(code="print(6 * 7)") == "42\n"
        assert Counted.runs == 1  # the server ran it, not a jail of this process
    finally:
        server.should_exit = True
        thread.join()
