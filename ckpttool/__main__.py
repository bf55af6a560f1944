from ckpttool.cli import main

main(prog_name="ckpttool")
