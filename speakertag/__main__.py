import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while starting, before main() handles signals itself
    sys.stderr.write("speakertag: interrupted\n")
    sys.exit(130)

main()
