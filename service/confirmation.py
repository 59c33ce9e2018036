"""What an operator must type before a job may overwrite a protected database, and the record of it.

Every Cloud Foundry space has a binding called `fac-db`, and the space a `cf`
command acts on is hidden state of the CLI: a restore copied from a dev
runbook runs in production just as well after a forgotten
`cf target -s production`. So where the service knows its space
(`VCAP_APPLICATION`'s `space_name`, config.Config.space) the confirmation
names the space as well as the binding, `--confirm production/fac-db`; where
no space is known (a laptop, the demo, the tests) the binding alone is
enough. The check runs once, in jobs.validate_request, for the CLI and the
control socket alike, before anything is touched.
"""

from __future__ import annotations

from service.errors import ConfirmationRequiredError


def required_confirmation(space: str | None, binding: str) -> str:
    """The exact `--confirm` value that lets a job overwrite `binding` in `space`."""
    return f"{space}/{binding}" if space else binding


def check_confirmation(job: str, space: str | None, binding: str, given: str | None) -> None:
    """Raise ConfirmationRequiredError (exit 3) unless `given` is exactly the required value.

    The message says what was wrong with what was typed; the hint gives the exact
    confirmation this space needs.
    """
    needed = required_confirmation(space, binding)
    if given == needed:
        return
    overwrites = f"{job} overwrites {binding} in space {space}" if space else f"{job} overwrites {binding}"
    given_space, _, given_binding = (given or "").rpartition("/")
    if not given:
        problem = f"{overwrites} and needs an explicit confirmation"
    elif space and given == binding:
        problem = f"{overwrites} and needs the space in its confirmation: --confirm {given} does not name it"
    elif space and given_binding == binding:
        problem = (f"{overwrites}, but the confirmation names space {given_space}: "
                   "check which space you target (cf target)")
    elif not space and given_space and given_binding == binding:
        problem = (f"{overwrites}, but this run does not know its space (no VCAP_APPLICATION), "
                   f"so --confirm {given} cannot be checked")
    else:
        problem = f"{overwrites} and needs an explicit confirmation: --confirm {given} does not name it"
    raise ConfirmationRequiredError(f"{problem}; nothing was touched",
                                    hint=f"repeat the command with --confirm {needed}")


def confirmation_record(space: str | None, binding: str, given: str | None) -> dict:
    """What a confirmed run names, for its events, the pre-restore manifest and the notification."""
    return {"space": space or "", "binding": binding, "confirmation": given or ""}
