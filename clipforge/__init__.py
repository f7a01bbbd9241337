"""The `clipforge` import namespace, and its lowest layer: what every clipforge package shares (torch-free,
stdlib only; imports nothing else of clipforge). errors.py: UserError, the base of every user-facing error;
atomic.py: the one atomic file write (fsync + rename); dataclass_cli.py: flags built from dataclasses.

The repo's top-level folders (data_pipeline/, pretrain/, launch/, eval/, modeling/) are installed as
`clipforge.data_pipeline` ... `clipforge.modeling` (setup.cfg's package_dir), so no generic top-level name
such as `eval` or `launch` enters a user's environment. In a source checkout those folders sit beside this
one, not inside it: the checkout's root joins this package's search path, so `clipforge.pretrain` is
./pretrain there too and `python -m clipforge.pretrain` works from either."""
import os

_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_CHECKOUT, "setup.cfg")) and os.path.isfile(
        os.path.join(_CHECKOUT, "pretrain", "__init__.py")):
    __path__.append(_CHECKOUT)  # noqa: F821 (a package's __path__)
