"""The CPU scheduling flag is added once, next to the user's flags, and never over the user's own."""

from examples.common import cpu_runtime


def test_sets_the_flag_when_xla_flags_is_unset():
  environ: dict[str, str] = {}
  assert cpu_runtime.prefer_small_temporaries(environ)
  assert environ["XLA_FLAGS"] == f"{cpu_runtime.SCHEDULER_FLAG}=false"


def test_keeps_the_users_other_flags():
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  assert cpu_runtime.prefer_small_temporaries(environ)
  assert environ["XLA_FLAGS"].split() == [
    "--xla_force_host_platform_device_count=4",
    f"{cpu_runtime.SCHEDULER_FLAG}=false",
  ]
  assert not cpu_runtime.prefer_small_temporaries(environ)  # a second call adds nothing
  assert environ["XLA_FLAGS"].count(cpu_runtime.SCHEDULER_FLAG) == 1


def test_leaves_the_users_own_choice_alone():
  environ = {"XLA_FLAGS": f"{cpu_runtime.SCHEDULER_FLAG}=true"}
  assert not cpu_runtime.prefer_small_temporaries(environ)
  assert environ["XLA_FLAGS"] == f"{cpu_runtime.SCHEDULER_FLAG}=true"
