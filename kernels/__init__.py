"""Pure array kernels (shipped as `ovgen.kernels`): no state, no model; arrays in, new arrays out."""
