# Data set rules, named as in the reference's Makefile; included by the top-level Makefile.
# Everything goes through `mela data`, which reads $(WORKSPACE) (a trailing slash is fine).

MELA ?= .venv/bin/mela
WORKSPACE ?= $(HOME)/mela-workspace
export WORKSPACE

DATA_ARCHIVES := miniImageNet tieredImageNet mini60 tiered780 aircraft cu_birds vgg_flower

.PHONY: download_all unpack_datasets check_datasets $(addprefix download_,$(DATA_ARCHIVES))

## download_all: download every prepared data set archive to $(WORKSPACE)/archives
download_all: $(addprefix download_,$(DATA_ARCHIVES))

download_miniImageNet:
	$(MELA) data download miniImageNet

download_tieredImageNet:
	$(MELA) data download tieredImageNet

download_mini60:
	$(MELA) data download mini60

download_tiered780:
	$(MELA) data download tiered780

download_aircraft:
	$(MELA) data download aircraft

download_cu_birds:
	$(MELA) data download cu_birds

download_vgg_flower:
	$(MELA) data download vgg_flower

## unpack_datasets: unpack every downloaded archive into $(WORKSPACE)/metaL_data
unpack_datasets:
	$(MELA) data unpack all

## check_datasets: report which data sets are present, missing or corrupt
check_datasets:
	$(MELA) data check
