# qsmprep container image: multi-orientation, multi-echo GRE -> QSM and STI, as a BIDS-App.
#
#   docker build -t qsmprep/qsmprep:0.1.0 \
#       --build-arg VERSION=0.1.0 \
#       --build-arg BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
#       --build-arg VCS_REF="$(git rev-parse --short HEAD)" .
#   docker run --rm -u "$(id -u):$(id -g)" -v /data/bids:/data:ro -v /data/out:/out \
#       -v /scratch:/scratch qsmprep/qsmprep:0.1.0 /data /out participant -w /scratch/work
#
# Stages: (1) build the qsmprep wheel; (2) a micromamba environment with Python, FSL's BET and
# FLIRT from the FSL conda channel and the exact PyPI pins of bids_app/requirements.txt
# (TensorFlow with CUDA libraries: GPU-capable with `docker run --gpus all` / `apptainer --nv`);
# (3) a slim runtime with only that environment, a non-root user and no network needs.
# Apptainer/Singularity images are built from this one (bids_app/Singularity.def).

ARG MICROMAMBA_VERSION=2.0.5
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
# 1. wheel: only the files the build backend (hatchling) needs
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
RUN python -m pip install --no-cache-dir build==1.3.0
COPY pyproject.toml README.md LICENSE ./
COPY qsmprep ./qsmprep
RUN python -m build --wheel --outdir /dist .

# ---------------------------------------------------------------------------------------------
# 2. env: conda (Python, FSL) + pinned PyPI packages + the qsmprep wheel, built as the image's
#    unprivileged user in /opt/conda/envs/qsmprep (the same path as at run time: conda
#    environments are not relocatable)
FROM mambaorg/micromamba:${MICROMAMBA_VERSION} AS env
COPY --chown=$MAMBA_USER:$MAMBA_USER bids_app/env.yml /tmp/env.yml
RUN micromamba create --yes --name qsmprep --file /tmp/env.yml \
    && micromamba clean --all --yes
COPY --chown=$MAMBA_USER:$MAMBA_USER bids_app/requirements.txt /tmp/requirements.txt
COPY --chown=$MAMBA_USER:$MAMBA_USER --from=wheel /dist/ /tmp/dist/
# --no-deps for the wheel: every dependency is pinned in requirements.txt.  The checks fail the
# build if an FSL tool or the entry point is missing, or the pins are inconsistent.
ARG ENV_PREFIX=/opt/conda/envs/qsmprep
RUN ${ENV_PREFIX}/bin/python -m pip install --no-cache-dir -r /tmp/requirements.txt \
    && ${ENV_PREFIX}/bin/python -m pip install --no-cache-dir --no-deps /tmp/dist/*.whl \
    && ${ENV_PREFIX}/bin/python -m pip check \
    && test -x ${ENV_PREFIX}/bin/bet \
    && test -x ${ENV_PREFIX}/bin/bet2 \
    && test -x ${ENV_PREFIX}/bin/flirt \
    && ${ENV_PREFIX}/bin/qsmprep --version \
    && find ${ENV_PREFIX} -name '__pycache__' -type d -prune -exec rm -rf {} + \
    && rm -rf /tmp/dist /tmp/requirements.txt /tmp/env.yml

# ---------------------------------------------------------------------------------------------
# 3. runtime: the environment only, at the same path
FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=env /opt/conda/envs/qsmprep /opt/conda/envs/qsmprep

# Unprivileged user; Apptainer runs as the calling user anyway.
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash qsmprep

# One thread per process: Nipype runs nodes in parallel (--nprocs); qsmprep raises the FFT
# threads per node with --omp-nthreads.  Single-threaded BLAS and ITK (SimpleITK registration)
# also make results bit-reproducible across runs and schedulers (MultiProc, SLURM, ...).
# FSL is the conda environment itself.
# NIPYPE_NO_ET: no version check over the network at run time (nothing is downloaded:
# nilearn's templates ship inside its wheel, test data are simulated).
ENV PATH=/opt/conda/envs/qsmprep/bin:${PATH} \
    FSLDIR=/opt/conda/envs/qsmprep \
    FSLOUTPUTTYPE=NIFTI_GZ \
    FSLMULTIFILEQUIT=TRUE \
    FSLLOCKDIR="" \
    FSLMACHINELIST="" \
    FSLREMOTECALL="" \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 \
    NIPYPE_NO_ET=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONNOUSERSITE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8 \
    QSMPREP_CONTAINER=docker

ARG VERSION=0.1.0
ARG BUILD_DATE=unknown
ARG VCS_REF=unknown
LABEL org.label-schema.schema-version="1.0" \
      org.label-schema.name="qsmprep" \
      org.label-schema.description="BIDS-App: multi-orientation, multi-echo GRE MRI to QSM and susceptibility tensor imaging" \
      org.label-schema.url="https://github.com/qsmprep/qsmprep" \
      org.label-schema.vcs-url="https://github.com/qsmprep/qsmprep" \
      org.label-schema.vcs-ref="${VCS_REF}" \
      org.label-schema.version="${VERSION}" \
      org.label-schema.build-date="${BUILD_DATE}" \
      org.label-schema.docker.cmd="docker run --rm -v /data/bids:/data:ro -v /data/out:/out qsmprep/qsmprep:${VERSION} /data /out participant" \
      org.opencontainers.image.title="qsmprep" \
      org.opencontainers.image.description="BIDS-App: multi-orientation, multi-echo GRE MRI to QSM and susceptibility tensor imaging" \
      org.opencontainers.image.source="https://github.com/qsmprep/qsmprep" \
      org.opencontainers.image.url="https://github.com/qsmprep/qsmprep" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.licenses="Apache-2.0"

USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["/opt/conda/envs/qsmprep/bin/qsmprep"]
CMD ["--help"]
