# The one project image every pipeline step runs from (mlops.settings.DEFAULT_IMAGE).
#   docker build -t localhost/kfp-kserve-sklearn:0.1.0 .      (or: make image)
# The project and its dependencies are installed at build time, pinned by constraints.txt, so a
# step starts without pip (the components are compiled with install_kfp_package=False).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (a layer that changes only with the pins), then the project itself.
COPY pyproject.toml constraints.txt README.md ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > requirements.txt
# Wheels where there are any (kfp itself is published as an sdist only, pure Python):
# neither stage needs a compiler.
RUN pip install --prefer-binary -c constraints.txt -r requirements.txt
COPY mlops mlops
COPY components components
COPY pipelines pipelines
COPY serving serving
RUN pip install --no-deps -c constraints.txt . \
    && pip check

# Final stage: the slim base, the virtualenv, a non-root user; no compiler, no pip cache.
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/mlops
RUN groupadd --gid 1000 mlops \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/mlops --shell /usr/sbin/nologin mlops
COPY --from=build /opt/venv /opt/venv
USER 1000:1000
WORKDIR /home/mlops
# KFP runs `python3 -m kfp.dsl.executor_main`; this is the same interpreter.
CMD ["mlops", "--help"]
