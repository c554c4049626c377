"""Developer tooling that no component imports and the image does not ship: the local stack that
`make serve` runs."""
