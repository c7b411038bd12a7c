"""The kit's XLA options: added to XLA_FLAGS on import, never over the user's own."""

from bnresearch import xla_flags
from tests.programs import run_python

YNN = "xla_cpu_experimental_ynn_fusion_type"


def test_options_are_added_after_the_users_flags():
    flags = xla_flags.with_kit_options("--xla_force_host_platform_device_count=8")
    assert flags.split() == [
        "--xla_force_host_platform_device_count=8",
        f"--{YNN}={xla_flags.CPU_OPTIONS[YNN]}",
    ]


def test_a_flag_the_user_set_keeps_the_users_value():
    mine = f"--{YNN}=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
    assert xla_flags.with_kit_options(mine) == mine


def test_adding_twice_adds_nothing_more():
    once = xla_flags.with_kit_options("")
    assert xla_flags.with_kit_options(once) == once


def _xla_flags_after_import(env: dict, before: str = ""):
    program = f"{before}\nimport os, bnresearch\nprint(os.environ.get('XLA_FLAGS', ''))"
    return run_python(program, env, without=("XLA_FLAGS", xla_flags.OPT_OUT))


def test_importing_the_package_sets_them_for_the_process_and_its_children():
    result = _xla_flags_after_import({"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"})
    assert result.stdout.split() == [
        "--xla_cpu_enable_fast_math=false",
        f"--{YNN}={xla_flags.CPU_OPTIONS[YNN]}",
    ]


def test_the_opt_out_leaves_xla_flags_alone():
    result = _xla_flags_after_import({xla_flags.OPT_OUT: "off"})
    assert result.stdout.strip() == ""


def test_a_backend_started_before_the_import_is_left_alone_with_a_warning():
    before = "import jax.numpy as jnp\njnp.ones(2).block_until_ready()"
    result = _xla_flags_after_import({}, before=before)
    assert result.stdout.strip() == ""
    assert "imported after JAX started its backend" in result.stderr


def test_only_cpu_programs_of_a_split_state_compile_without_the_ynn_fusions():
    assert xla_flags.compile_options("cpu", state_is_split=True) == {
        "xla_cpu_experimental_ynn_fusion_type": ""
    }
    assert xla_flags.compile_options("cpu", state_is_split=False) == {}
    assert xla_flags.compile_options("gpu", state_is_split=True) == {}


def test_the_split_state_options_are_valid_for_this_xla():
    # XLA refuses an option it does not know, or a value it cannot parse, at compile time.
    import jax
    import jax.numpy as jnp

    options = xla_flags.compile_options("cpu", state_is_split=True)
    compiled = jax.jit(jnp.tanh).lower(jnp.ones(3)).compile(options)
    assert compiled(jnp.zeros(3)).tolist() == [0.0, 0.0, 0.0]
