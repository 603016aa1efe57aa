#compdef harpctl

__harpctl_complete() {
    local -ar non_empty_completions=("${@:#(|:*)}")
    local -ar empty_completions=("${(M)@:#(|:*)}")
    _describe -V '' non_empty_completions -- empty_completions -P $'\'\''
}

__harpctl_custom_complete() {
    local -a completions
    completions=("${(@f)"$("${command_name}" "${@}" "${command_line[@]}")"}")
    if [[ "${#completions[@]}" -gt 1 ]]; then
        __harpctl_complete "${completions[@]:0:-1}"
    fi
}

__harpctl_cursor_index_in_current_word() {
    if [[ -z "${QIPREFIX}${IPREFIX}${PREFIX}" ]]; then
        printf 0
    else
        printf %s "${#${(z)LBUFFER}[-1]}"
    fi
}

_harpctl() {
    emulate -RL zsh -G
    setopt extendedglob nullglob numericglobsort
    unsetopt aliases banghist

    local -xr SAP_SHELL=zsh
    local -x SAP_SHELL_VERSION
    SAP_SHELL_VERSION="$(builtin emulate zsh -c 'printf %s "${ZSH_VERSION}"')"
    local -r SAP_SHELL_VERSION

    local context state state_descr line
    local -A opt_args

    local -r command_name="${words[1]}"
    local -ar command_line=("${words[@]}")
    local -ir current_word_index="$((CURRENT - 1))"

    local -i ret=1
    local -ar arg_specs=(
        '--version[Show the version.]'
        '(-h --help)'{-h,--help}'[Show help information.]'
        '(-): :->command'
        '(-)*:: :->arg'
    )
    _arguments -w -s -S : "${arg_specs[@]}" && ret=0
    case "${state}" in
    command)
        local -ar subcommands=(
            'get:Show cluster state.'
            'set:Change proxy directives or node fields.'
            'apply:Load a bootstrap file (cluster, locations, nodes, proxies) in one transaction.'
            'manage:Make a proxy follow the leader again.'
            'unmanage:Make a proxy keep its target and connections whatever the leader does.'
            'promote:Make a node the lead master of its location.'
            'version:Print harpctl'\''s version.'
            'help:Show subcommand help information.'
        )
        _describe -V subcommand subcommands && ret=0
        ;;
    arg)
        case "${words[1]}" in
        get|set|apply|manage|unmanage|promote|version|help)
            "_harpctl_${words[1]}" && ret=0
            ;;
        esac
        ;;
    esac

    return "${ret}"
}

_harpctl_get() {
    local -i ret=1
    local -ar arg_specs=(
        '--version[Show the version.]'
        '(-h --help)'{-h,--help}'[Show help information.]'
        '(-): :->command'
        '(-)*:: :->arg'
    )
    _arguments -w -s -S : "${arg_specs[@]}" && ret=0
    case "${state}" in
    command)
        local -ar subcommands=(
            'cluster:The cluster and whether it is managed.'
            'nodes:Every node: location, role and DSN (password masked).'
            'node:One node.'
            'locations:Every location and its lead master.'
            'location:One location and its lead master.'
            'leader:The lead master of a location.'
            'proxies:Every proxy, global first: effective directives and live status.'
            'proxy:One proxy, or '\''global'\''.'
        )
        _describe -V subcommand subcommands && ret=0
        ;;
    arg)
        case "${words[1]}" in
        cluster|nodes|node|locations|location|leader|proxies|proxy)
            "_harpctl_get_${words[1]}" && ret=0
            ;;
        esac
        ;;
    esac

    return "${ret}"
}

_harpctl_get_cluster() {
    local -i ret=1
    local -ar ___output=('table' 'json' 'yaml')
    local -ar arg_specs=(
        '(-f --config-file)'{-f,--config-file}'[The configuration file whose cluster and dcs stanzas to use.]:file:'
        '*--dcs[An etcd endpoint (host\:port), instead of the file'\''s; repeatable.]:endpoint:'
        '(-c --cluster)'{-c,--cluster}'[The cluster name, instead of the file'\''s.]:cluster:'
        '(-o --output)'{-o,--output}'[table (HARP'\''s), json or yaml.]:output:{__harpctl_complete "${___output[@]}"}'
        '--version[Show the version.]'
        '(-h --help)'{-h,--help}'[Show help information.]'
    )
    _arguments -w -s -S : "${arg_specs[@]}" && ret=0

    return "${ret}"
}

_harpctl_get_nodes() {
    local -i ret=1
    local -ar ___output=('table' 'json' 'yaml')
    local -ar arg_specs=(
        '(-f --config-file)'{-f,--config-file}'[The configuration file whose cluster and dcs stanzas to use.]:file:'
        '*--dcs[An etcd endpoint (host\:port), instead of the file'\''s; repeatable.]:endpoint:'
        '(-c --cluster)'{-c,--cluster}'[The cluster name, instead of the file'\''s.]:cluster:'
        '(-o --output)'{-o,--output}'[table (HARP'\''s), json or yaml.]:output:{__harpctl_complete "${___output[@]}"}'
        '--version[Show the version.]'
        '(-h --help)'{-h,--help}'[Show help information.]'
    )
    _arguments -w -s -S : "${arg_specs[@]}" && ret=0

    return "${ret}"
}

_harpctl_get_node() {
    local -i ret=1
    local -ar ___output=('table' 'json' 'yaml')
    local -ar arg_specs=(
        '(-f --config-file)'{-f,--config-file}'[The configuration file whose cluster and dcs stanzas to use.]:file:'
        '*--dcs[An etcd endpoint (host\:port), instead of the file'\''s; repeatable.]:endpoint:'
        '(-c --cluster)'{-c,--cluster}'[The cluster name, instead of the file'\''s.]:cluster:'
        '(-o --output)'{-o,--output}'[table (HARP'\''s), json or yaml.]:output:{__harpctl_complete "${___output[@]}"}'
        ':name:'
        '--version[Show the version.]'
        '(-h --help)'{-h,--help}'[Show help information.]'
    )
    _arguments -w -s -S : "${arg_specs[@]}" && ret=0

    return "${ret}"
}

_harpctl_get_locations() {
    local -i ret=1
    local -ar ___output=('table' 'json' 'yaml')
    local -ar arg_specs=(
        '(-f --config-file)'{-f,--config-file}'[The configuration file whose cluster and dcs stanzas to use.]:file:'
        '*--dcs[An etcd endpoint (host\:port), instead of the file'\''s; repeatable.]:endpoint:'
        '(-c --cluster)'{-c,--cluster}'[The cluster name, instead of the file'\''s.]:cluster:'
        '(-o --output)'{-o,--output}'[table (HARP'\''s), json or yaml.]:output:{__harpctl_complete "${___output[@]}"}'
        '--version[Show the version.]'
        '(-h --help)'{-h,--help}'[Show help information.]'
    )
    _arguments -w -s -S : "${arg_specs[@]}" && ret=0

    return "${ret}"
}

_harpctl_get_location() {
    local -i ret=1
    local -ar ___output=('table' 'json' 'yaml')
    local -ar arg_specs=(
        '(-f --config-file)'{-f,--config-file}'[The configuration file whose cluster and dcs stanzas to use.]:file:'
        '*--dcs[An etcd endpoint (host\:port), instead of the file'\''s; repeatable.]:endpoint:'
        '(-c --cluster)'{-c,--cluster}'[The cluster name, instead of the file'\''s.]:cluster:'
        '(-o --output)'{-o,--output}'[table (HARP'\''s), json or yaml.]:output:{__harpctl_complete "${___output[@]}"}'
        ':location:'
        '--version[Show the version.]'
        '(-h --help)'{-h,--help}'[Show help information.]'
    )
    _arguments -w -s -S : "${arg_specs[@]}" && ret=0

    return "${ret}"
}

_harpctl_get_leader() {
    local -i ret=1
    local -ar ___output=('table' 'json' 'yaml')
    local -ar arg_specs=(
        '(-f --config-file)'{-f,--config-file}'[The configuration file whose cluster and dcs stanzas to use.]:file:'
        '*--dcs[An etcd endpoint (host\:port), instead of the file'\''s; repeatable.]:endpoint:'
        '(-c --cluster)'{-c,--cluster}'[The cluster name, instead of the file'\''s.]:cluster:'
        '(-o --output)'{-o,--output}'[table (HARP'\''s), json or yaml.]:output:{__harpctl_complete "${___output[@]}"}'
        ':location:'
        '--version[Show the version.]'
        '(-h --help)'{-h,--help}'[Show help information.]'
    )
    _arguments -w -s -S : "${arg_specs[@]}" && ret=0

    return "${ret}"
}

_harpctl_get_proxies() {
    local -i ret=1
    local -ar ___output=('table' 'json' 'yaml')
    local -ar arg_specs=(
        '(-f --config-file)'{-f,--config-file}'[The configuration file whose cluster and dcs stanzas to use.]:file:'
        '*--dcs[An etcd endpoint (host\:port), instead of the file'\''s; repeatable.]:endpoint:'
        '(-c --cluster)'{-c,--cluster}'[The cluster name, instead of the file'\''s.]:cluster:'
        '(-o --output)'{-o,--output}'[table (HARP'\''s), json or yaml.]:output:{__harpctl_complete "${___output[@]}"}'
        '--version[Show the version.]'
        '(-h --help)'{-h,--help}'[Show help information.]'
    )
    _arguments -w -s -S : "${arg_specs[@]}" && ret=0

    return "${ret}"
}

_harpctl_get_proxy() {
    local -i ret=1
    local -ar ___output=('table' 'json' 'yaml')
    local -ar arg_specs=(
        '(-f --config-file)'{-f,--config-file}'[The configuration file whose cluster and dcs stanzas to use.]:file:'
        '*--dcs[An etcd endpoint (host\:port), instead of the file'\''s; repeatable.]:endpoint:'
        '(-c --cluster)'{-c,--cluster}'[The cluster name, instead of the file'\''s.]:cluster:'
        '(-o --output)'{-o,--output}'[table (HARP'\''s), json or yaml.]:output:{__harpctl_complete "${___output[@]}"}'
        ':name:'
        '--version[Show the version.]'
        '(-h --help)'{-h,--help}'[Show help information.]'
    )
    _arguments -w -s -S : "${arg_specs[@]}" && ret=0

    return "${ret}"
}

_harpctl_set() {
    local -i ret=1
    local -ar arg_specs=(
        '--version[Show the version.]'
        '(-h --help)'{-h,--help}'[Show help information.]'
        '(-): :->command'
        '(-)*:: :->arg'
    )
    _arguments -w -s -S : "${arg_specs[@]}" && ret=0
    case "${state}" in
    command)
        local -ar subcommands=(
            'proxy:Set directives for one proxy or for global.'
            'node:Set fields of a node record (dsn, location, priority, ...).'
        )
        _describe -V subcommand subcommands && ret=0
        ;;
    arg)
        case "${words[1]}" in
        proxy|node)
            "_harpctl_set_${words[1]}" && ret=0
            ;;
        esac
        ;;
    esac

    return "${ret}"
}

_harpctl_set_proxy() {
    local -i ret=1
    local -ar ___output=('table' 'json' 'yaml')
    local -ar arg_specs=(
        '(-f --config-file)'{-f,--config-file}'[The configuration file whose cluster and dcs stanzas to use.]:file:'
        '*--dcs[An etcd endpoint (host\:port), instead of the file'\''s; repeatable.]:endpoint:'
        '(-c --cluster)'{-c,--cluster}'[The cluster name, instead of the file'\''s.]:cluster:'
        '(-o --output)'{-o,--output}'[table (HARP'\''s), json or yaml.]:output:{__harpctl_complete "${___output[@]}"}'
        ':name:'
        '*:settings:'
        '--version[Show the version.]'
        '(-h --help)'{-h,--help}'[Show help information.]'
    )
    _arguments -w -s -S : "${arg_specs[@]}" && ret=0

    return "${ret}"
}

_harpctl_set_node() {
    local -i ret=1
    local -ar ___output=('table' 'json' 'yaml')
    local -ar arg_specs=(
        '(-f --config-file)'{-f,--config-file}'[The configuration file whose cluster and dcs stanzas to use.]:file:'
        '*--dcs[An etcd endpoint (host\:port), instead of the file'\''s; repeatable.]:endpoint:'
        '(-c --cluster)'{-c,--cluster}'[The cluster name, instead of the file'\''s.]:cluster:'
        '(-o --output)'{-o,--output}'[table (HARP'\''s), json or yaml.]:output:{__harpctl_complete "${___output[@]}"}'
        ':name:'
        '*:settings:'
        '--version[Show the version.]'
        '(-h --help)'{-h,--help}'[Show help information.]'
    )
    _arguments -w -s -S : "${arg_specs[@]}" && ret=0

    return "${ret}"
}

_harpctl_apply() {
    local -i ret=1
    local -ar ___output=('table' 'json' 'yaml')
    local -ar arg_specs=(
        '(-f --config-file)'{-f,--config-file}'[The configuration file whose cluster and dcs stanzas to use.]:file:'
        '*--dcs[An etcd endpoint (host\:port), instead of the file'\''s; repeatable.]:endpoint:'
        '(-c --cluster)'{-c,--cluster}'[The cluster name, instead of the file'\''s.]:cluster:'
        '(-o --output)'{-o,--output}'[table (HARP'\''s), json or yaml.]:output:{__harpctl_complete "${___output[@]}"}'
        ':file:'
        '--version[Show the version.]'
        '(-h --help)'{-h,--help}'[Show help information.]'
    )
    _arguments -w -s -S : "${arg_specs[@]}" && ret=0

    return "${ret}"
}

_harpctl_manage() {
    local -i ret=1
    local -ar arg_specs=(
        '--version[Show the version.]'
        '(-h --help)'{-h,--help}'[Show help information.]'
        '(-): :->command'
        '(-)*:: :->arg'
    )
    _arguments -w -s -S : "${arg_specs[@]}" && ret=0
    case "${state}" in
    command)
        local -ar subcommands=(
            'proxy:Manage one proxy instance.'
        )
        _describe -V subcommand subcommands && ret=0
        ;;
    arg)
        case "${words[1]}" in
        proxy)
            "_harpctl_manage_${words[1]}" && ret=0
            ;;
        esac
        ;;
    esac

    return "${ret}"
}

_harpctl_manage_proxy() {
    local -i ret=1
    local -ar ___output=('table' 'json' 'yaml')
    local -ar arg_specs=(
        '(-f --config-file)'{-f,--config-file}'[The configuration file whose cluster and dcs stanzas to use.]:file:'
        '*--dcs[An etcd endpoint (host\:port), instead of the file'\''s; repeatable.]:endpoint:'
        '(-c --cluster)'{-c,--cluster}'[The cluster name, instead of the file'\''s.]:cluster:'
        '(-o --output)'{-o,--output}'[table (HARP'\''s), json or yaml.]:output:{__harpctl_complete "${___output[@]}"}'
        ':name:'
        '--version[Show the version.]'
        '(-h --help)'{-h,--help}'[Show help information.]'
    )
    _arguments -w -s -S : "${arg_specs[@]}" && ret=0

    return "${ret}"
}

_harpctl_unmanage() {
    local -i ret=1
    local -ar arg_specs=(
        '--version[Show the version.]'
        '(-h --help)'{-h,--help}'[Show help information.]'
        '(-): :->command'
        '(-)*:: :->arg'
    )
    _arguments -w -s -S : "${arg_specs[@]}" && ret=0
    case "${state}" in
    command)
        local -ar subcommands=(
            'proxy:Unmanage one proxy instance.'
        )
        _describe -V subcommand subcommands && ret=0
        ;;
    arg)
        case "${words[1]}" in
        proxy)
            "_harpctl_unmanage_${words[1]}" && ret=0
            ;;
        esac
        ;;
    esac

    return "${ret}"
}

_harpctl_unmanage_proxy() {
    local -i ret=1
    local -ar ___output=('table' 'json' 'yaml')
    local -ar arg_specs=(
        '(-f --config-file)'{-f,--config-file}'[The configuration file whose cluster and dcs stanzas to use.]:file:'
        '*--dcs[An etcd endpoint (host\:port), instead of the file'\''s; repeatable.]:endpoint:'
        '(-c --cluster)'{-c,--cluster}'[The cluster name, instead of the file'\''s.]:cluster:'
        '(-o --output)'{-o,--output}'[table (HARP'\''s), json or yaml.]:output:{__harpctl_complete "${___output[@]}"}'
        ':name:'
        '--version[Show the version.]'
        '(-h --help)'{-h,--help}'[Show help information.]'
    )
    _arguments -w -s -S : "${arg_specs[@]}" && ret=0

    return "${ret}"
}

_harpctl_promote() {
    local -i ret=1
    local -ar ___output=('table' 'json' 'yaml')
    local -ar arg_specs=(
        '(-f --config-file)'{-f,--config-file}'[The configuration file whose cluster and dcs stanzas to use.]:file:'
        '*--dcs[An etcd endpoint (host\:port), instead of the file'\''s; repeatable.]:endpoint:'
        '(-c --cluster)'{-c,--cluster}'[The cluster name, instead of the file'\''s.]:cluster:'
        '(-o --output)'{-o,--output}'[table (HARP'\''s), json or yaml.]:output:{__harpctl_complete "${___output[@]}"}'
        ':node:'
        '--location[The location; by default the node'\''s own.]:location:'
        '--ttl[Put the leader key on a lease of this many seconds.]:ttl:'
        '--version[Show the version.]'
        '(-h --help)'{-h,--help}'[Show help information.]'
    )
    _arguments -w -s -S : "${arg_specs[@]}" && ret=0

    return "${ret}"
}

_harpctl_version() {
    local -i ret=1
    local -ar ___output=('table' 'json' 'yaml')
    local -ar arg_specs=(
        '(-f --config-file)'{-f,--config-file}'[The configuration file whose cluster and dcs stanzas to use.]:file:'
        '*--dcs[An etcd endpoint (host\:port), instead of the file'\''s; repeatable.]:endpoint:'
        '(-c --cluster)'{-c,--cluster}'[The cluster name, instead of the file'\''s.]:cluster:'
        '(-o --output)'{-o,--output}'[table (HARP'\''s), json or yaml.]:output:{__harpctl_complete "${___output[@]}"}'
        '--version[Show the version.]'
        '(-h --help)'{-h,--help}'[Show help information.]'
    )
    _arguments -w -s -S : "${arg_specs[@]}" && ret=0

    return "${ret}"
}

_harpctl_help() {
    local -i ret=1
    local -ar arg_specs=(
        '*:subcommands:'
        '--version[Show the version.]'
    )
    _arguments -w -s -S : "${arg_specs[@]}" && ret=0

    return "${ret}"
}

if [[ "${funcstack[1]}" = _harpctl ]]; then
    _harpctl "${@}"
else
    compdef _harpctl harpctl
fi
