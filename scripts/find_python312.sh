#!/usr/bin/env bash
# Prints the path of a Python >= 3.12 interpreter (for the llama-stack-client 0.3 e2e venv),
# or nothing if this machine has none. Looks at python3.12/python3.13 on PATH, then pyenv.
set -u
for candidate in python3.12 python3.13; do
  for env in "" "PYENV_VERSION=$(pyenv versions --bare 2>/dev/null | grep -E "^${candidate#python}(\.|$)" | tail -n 1)"; do
    path=$(env ${env:+"$env"} "$candidate" -c 'import sys; print(sys.executable)' 2>/dev/null) || continue
    [ -n "$path" ] && { echo "$path"; exit 0; }
  done
done
exit 0
