.PHONY: test test-slow lint format demo

test:  ## the default suite (the README's test command)
	python -m pytest -m "not slow" -q

test-slow:
	python -m pytest -m slow -q

lint:
	ruff check . && ruff format --check .

format:
	ruff check --fix . && ruff format .

demo:
	specblock demo
