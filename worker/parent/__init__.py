"""The parent side of the process boundary: it takes jobs, supervises one child and
reports results. It never imports torch or the user's module, and never touches CUDA."""
