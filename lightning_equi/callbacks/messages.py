"""Messages the callbacks share, so that no callback imports another callback's module."""

__all__ = ["NO_SPEC_MESSAGE"]

NO_SPEC_MESSAGE = (
    "{who} needs the symmetry spec of the model: {name} has no symmetry_spec() method and no spec was "
    "given. Declare how the group acts on each layer, e.g.\n"
    "    spec = SymmetrySpec('C4').layers(nn.Conv2d, fields='regular')"
    ".layer('conv1', 'trivial', 'regular').layer('fc', 'regular', 'trivial')\n"
    "and pass it as spec=spec, or return it from a method symmetry_spec(self) of the model."
)
