from zoommil.cli import console

console()
