# Sourced by the scripts: puts the Python 3.12 the demo recipe builds with on PATH (pyenv installs it
# beside a default 3.11 on these machines) and the tools pip installed.
if ! command -v python3.12 >/dev/null 2>&1 || ! python3.12 -V >/dev/null 2>&1; then
  if command -v pyenv >/dev/null 2>&1 && p=$(pyenv prefix 3.12 2>/dev/null || pyenv prefix 3.12.1 2>/dev/null); then
    export PATH="$p/bin:$PATH"
  fi
fi
if command -v pyenv >/dev/null 2>&1; then
  export PATH="$(pyenv prefix 2>/dev/null | head -1)/bin:$PATH"
fi
