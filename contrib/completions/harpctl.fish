function __harpctl_should_offer_completions_for_flags_or_options -a expected_commands
    set -l non_repeating_flags_or_options $argv[2..]
    set -l non_repeating_flags_or_options_absent 0
    set -l positional_index 0
    set -l commands
    __harpctl_parse_tokens
    test "$commands" = "$expected_commands"; and return $non_repeating_flags_or_options_absent
end

function __harpctl_should_offer_completions_for_positional -a expected_commands positional_index_comparison expected_positional_index
    set -l non_repeating_flags_or_options
    set -l non_repeating_flags_or_options_absent 0
    set -l positional_index 0
    set -l commands
    __harpctl_parse_tokens
    test "$commands" = "$expected_commands" -a \( "$positional_index" "$positional_index_comparison" "$expected_positional_index" \)
end

function __harpctl_parse_tokens -S
    set -l unparsed_tokens (__harpctl_tokens -pc)
    switch $unparsed_tokens[1]
    case 'harpctl'
        __harpctl_parse_subcommand 0 'version' 'h/help'
        switch $unparsed_tokens[1]
        case 'get'
            __harpctl_parse_subcommand 0 'version' 'h/help'
            switch $unparsed_tokens[1]
            case 'cluster'
                __harpctl_parse_subcommand 0 'f/config-file=' 'dcs=+' 'c/cluster=' 'o/output=' 'version' 'h/help'
            case 'nodes'
                __harpctl_parse_subcommand 0 'f/config-file=' 'dcs=+' 'c/cluster=' 'o/output=' 'version' 'h/help'
            case 'node'
                __harpctl_parse_subcommand 1 'f/config-file=' 'dcs=+' 'c/cluster=' 'o/output=' 'version' 'h/help'
            case 'locations'
                __harpctl_parse_subcommand 0 'f/config-file=' 'dcs=+' 'c/cluster=' 'o/output=' 'version' 'h/help'
            case 'location'
                __harpctl_parse_subcommand 1 'f/config-file=' 'dcs=+' 'c/cluster=' 'o/output=' 'version' 'h/help'
            case 'leader'
                __harpctl_parse_subcommand 1 'f/config-file=' 'dcs=+' 'c/cluster=' 'o/output=' 'version' 'h/help'
            case 'proxies'
                __harpctl_parse_subcommand 0 'f/config-file=' 'dcs=+' 'c/cluster=' 'o/output=' 'version' 'h/help'
            case 'proxy'
                __harpctl_parse_subcommand 1 'f/config-file=' 'dcs=+' 'c/cluster=' 'o/output=' 'version' 'h/help'
            end
        case 'set'
            __harpctl_parse_subcommand 0 'version' 'h/help'
            switch $unparsed_tokens[1]
            case 'proxy'
                __harpctl_parse_subcommand -r 2 'f/config-file=' 'dcs=+' 'c/cluster=' 'o/output=' 'version' 'h/help'
            case 'node'
                __harpctl_parse_subcommand -r 2 'f/config-file=' 'dcs=+' 'c/cluster=' 'o/output=' 'version' 'h/help'
            end
        case 'apply'
            __harpctl_parse_subcommand 1 'f/config-file=' 'dcs=+' 'c/cluster=' 'o/output=' 'version' 'h/help'
        case 'manage'
            __harpctl_parse_subcommand 0 'version' 'h/help'
            switch $unparsed_tokens[1]
            case 'proxy'
                __harpctl_parse_subcommand 1 'f/config-file=' 'dcs=+' 'c/cluster=' 'o/output=' 'version' 'h/help'
            end
        case 'unmanage'
            __harpctl_parse_subcommand 0 'version' 'h/help'
            switch $unparsed_tokens[1]
            case 'proxy'
                __harpctl_parse_subcommand 1 'f/config-file=' 'dcs=+' 'c/cluster=' 'o/output=' 'version' 'h/help'
            end
        case 'promote'
            __harpctl_parse_subcommand 1 'f/config-file=' 'dcs=+' 'c/cluster=' 'o/output=' 'location=' 'ttl=' 'version' 'h/help'
        case 'version'
            __harpctl_parse_subcommand 0 'f/config-file=' 'dcs=+' 'c/cluster=' 'o/output=' 'version' 'h/help'
        case 'help'
            __harpctl_parse_subcommand -r 1 'version'
        end
    end
end

function __harpctl_tokens
    if test (string split -m 1 -f 1 -- . "$FISH_VERSION") -gt 3
        commandline --tokens-raw $argv
    else
        commandline -o $argv
    end
end

function __harpctl_parse_subcommand -S -a positional_count
    argparse -s r -- $argv
    set -l option_specs $argv[2..]
    set -l is_repeating_positional $_flag_r
    set -el _flag_r
    set -a commands $unparsed_tokens[1]
    set positional_index 0
    while true
        set -e unparsed_tokens[1]
        argparse -sn "$commands" $option_specs -- $unparsed_tokens 2> /dev/null
        set unparsed_tokens $argv
        set positional_index (math $positional_index + 1)
        for non_repeating_flag_or_option in $non_repeating_flags_or_options
            if set -ql "_flag_$(string replace -a - _ -- $non_repeating_flag_or_option)"
                set non_repeating_flags_or_options_absent 1
                break
            end
        end
        test (count $unparsed_tokens) -eq 0 -o \( -z "$is_repeating_positional" -a "$positional_index" -gt "$positional_count" \) && break
    end
end

function __harpctl_complete_directories
    set -l token (commandline -t)
    string match -- '*/' $token
    set -l subdirs $token*/
    printf %s\n $subdirs
end

function __harpctl_custom_completion
    set -x SAP_SHELL fish
    set -x SAP_SHELL_VERSION $FISH_VERSION
    set -l tokens (__harpctl_tokens -p)
    if test -z "$(__harpctl_tokens -t)"
        set -l index (count (__harpctl_tokens -pc))
        set tokens $tokens[..$index] \'\' $tokens[(math $index + 1)..]
    end
    command $tokens[1] $argv $tokens
end

complete -c 'harpctl' -f
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl" version' -l 'version' -d 'Show the version.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_positional "harpctl" -eq 1' -fa 'get' -d 'Show cluster state.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_positional "harpctl" -eq 1' -fa 'set' -d 'Change proxy directives or node fields.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_positional "harpctl" -eq 1' -fa 'apply' -d 'Load a bootstrap file (cluster, locations, nodes, proxies) in one transaction.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_positional "harpctl" -eq 1' -fa 'manage' -d 'Make a proxy follow the leader again.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_positional "harpctl" -eq 1' -fa 'unmanage' -d 'Make a proxy keep its target and connections whatever the leader does.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_positional "harpctl" -eq 1' -fa 'promote' -d 'Make a node the lead master of its location.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_positional "harpctl" -eq 1' -fa 'version' -d 'Print harpctl\'s version.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_positional "harpctl" -eq 1' -fa 'help' -d 'Show subcommand help information.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get" version' -l 'version' -d 'Show the version.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_positional "harpctl get" -eq 1' -fa 'cluster' -d 'The cluster and whether it is managed.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_positional "harpctl get" -eq 1' -fa 'nodes' -d 'Every node: location, role and DSN (password masked).'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_positional "harpctl get" -eq 1' -fa 'node' -d 'One node.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_positional "harpctl get" -eq 1' -fa 'locations' -d 'Every location and its lead master.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_positional "harpctl get" -eq 1' -fa 'location' -d 'One location and its lead master.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_positional "harpctl get" -eq 1' -fa 'leader' -d 'The lead master of a location.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_positional "harpctl get" -eq 1' -fa 'proxies' -d 'Every proxy, global first: effective directives and live status.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_positional "harpctl get" -eq 1' -fa 'proxy' -d 'One proxy, or \'global\'.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get cluster" config-file f' -s 'f' -l 'config-file' -d 'The configuration file whose cluster and dcs stanzas to use.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get cluster"' -l 'dcs' -d 'An etcd endpoint (host:port), instead of the file\'s; repeatable.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get cluster" c cluster' -s 'c' -l 'cluster' -d 'The cluster name, instead of the file\'s.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get cluster" o output' -s 'o' -l 'output' -d 'table (HARP\'s), json or yaml.' -rfka 'table json yaml'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get cluster" version' -l 'version' -d 'Show the version.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get cluster" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get nodes" config-file f' -s 'f' -l 'config-file' -d 'The configuration file whose cluster and dcs stanzas to use.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get nodes"' -l 'dcs' -d 'An etcd endpoint (host:port), instead of the file\'s; repeatable.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get nodes" c cluster' -s 'c' -l 'cluster' -d 'The cluster name, instead of the file\'s.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get nodes" o output' -s 'o' -l 'output' -d 'table (HARP\'s), json or yaml.' -rfka 'table json yaml'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get nodes" version' -l 'version' -d 'Show the version.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get nodes" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get node" config-file f' -s 'f' -l 'config-file' -d 'The configuration file whose cluster and dcs stanzas to use.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get node"' -l 'dcs' -d 'An etcd endpoint (host:port), instead of the file\'s; repeatable.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get node" c cluster' -s 'c' -l 'cluster' -d 'The cluster name, instead of the file\'s.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get node" o output' -s 'o' -l 'output' -d 'table (HARP\'s), json or yaml.' -rfka 'table json yaml'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get node" version' -l 'version' -d 'Show the version.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get node" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get locations" config-file f' -s 'f' -l 'config-file' -d 'The configuration file whose cluster and dcs stanzas to use.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get locations"' -l 'dcs' -d 'An etcd endpoint (host:port), instead of the file\'s; repeatable.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get locations" c cluster' -s 'c' -l 'cluster' -d 'The cluster name, instead of the file\'s.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get locations" o output' -s 'o' -l 'output' -d 'table (HARP\'s), json or yaml.' -rfka 'table json yaml'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get locations" version' -l 'version' -d 'Show the version.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get locations" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get location" config-file f' -s 'f' -l 'config-file' -d 'The configuration file whose cluster and dcs stanzas to use.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get location"' -l 'dcs' -d 'An etcd endpoint (host:port), instead of the file\'s; repeatable.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get location" c cluster' -s 'c' -l 'cluster' -d 'The cluster name, instead of the file\'s.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get location" o output' -s 'o' -l 'output' -d 'table (HARP\'s), json or yaml.' -rfka 'table json yaml'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get location" version' -l 'version' -d 'Show the version.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get location" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get leader" config-file f' -s 'f' -l 'config-file' -d 'The configuration file whose cluster and dcs stanzas to use.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get leader"' -l 'dcs' -d 'An etcd endpoint (host:port), instead of the file\'s; repeatable.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get leader" c cluster' -s 'c' -l 'cluster' -d 'The cluster name, instead of the file\'s.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get leader" o output' -s 'o' -l 'output' -d 'table (HARP\'s), json or yaml.' -rfka 'table json yaml'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get leader" version' -l 'version' -d 'Show the version.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get leader" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get proxies" config-file f' -s 'f' -l 'config-file' -d 'The configuration file whose cluster and dcs stanzas to use.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get proxies"' -l 'dcs' -d 'An etcd endpoint (host:port), instead of the file\'s; repeatable.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get proxies" c cluster' -s 'c' -l 'cluster' -d 'The cluster name, instead of the file\'s.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get proxies" o output' -s 'o' -l 'output' -d 'table (HARP\'s), json or yaml.' -rfka 'table json yaml'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get proxies" version' -l 'version' -d 'Show the version.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get proxies" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get proxy" config-file f' -s 'f' -l 'config-file' -d 'The configuration file whose cluster and dcs stanzas to use.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get proxy"' -l 'dcs' -d 'An etcd endpoint (host:port), instead of the file\'s; repeatable.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get proxy" c cluster' -s 'c' -l 'cluster' -d 'The cluster name, instead of the file\'s.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get proxy" o output' -s 'o' -l 'output' -d 'table (HARP\'s), json or yaml.' -rfka 'table json yaml'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get proxy" version' -l 'version' -d 'Show the version.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl get proxy" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl set" version' -l 'version' -d 'Show the version.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl set" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_positional "harpctl set" -eq 1' -fa 'proxy' -d 'Set directives for one proxy or for global.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_positional "harpctl set" -eq 1' -fa 'node' -d 'Set fields of a node record (dsn, location, priority, ...).'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl set proxy" config-file f' -s 'f' -l 'config-file' -d 'The configuration file whose cluster and dcs stanzas to use.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl set proxy"' -l 'dcs' -d 'An etcd endpoint (host:port), instead of the file\'s; repeatable.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl set proxy" c cluster' -s 'c' -l 'cluster' -d 'The cluster name, instead of the file\'s.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl set proxy" o output' -s 'o' -l 'output' -d 'table (HARP\'s), json or yaml.' -rfka 'table json yaml'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl set proxy" version' -l 'version' -d 'Show the version.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl set proxy" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl set node" config-file f' -s 'f' -l 'config-file' -d 'The configuration file whose cluster and dcs stanzas to use.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl set node"' -l 'dcs' -d 'An etcd endpoint (host:port), instead of the file\'s; repeatable.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl set node" c cluster' -s 'c' -l 'cluster' -d 'The cluster name, instead of the file\'s.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl set node" o output' -s 'o' -l 'output' -d 'table (HARP\'s), json or yaml.' -rfka 'table json yaml'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl set node" version' -l 'version' -d 'Show the version.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl set node" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl apply" config-file f' -s 'f' -l 'config-file' -d 'The configuration file whose cluster and dcs stanzas to use.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl apply"' -l 'dcs' -d 'An etcd endpoint (host:port), instead of the file\'s; repeatable.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl apply" c cluster' -s 'c' -l 'cluster' -d 'The cluster name, instead of the file\'s.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl apply" o output' -s 'o' -l 'output' -d 'table (HARP\'s), json or yaml.' -rfka 'table json yaml'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl apply" version' -l 'version' -d 'Show the version.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl apply" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl manage" version' -l 'version' -d 'Show the version.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl manage" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_positional "harpctl manage" -eq 1' -fa 'proxy' -d 'Manage one proxy instance.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl manage proxy" config-file f' -s 'f' -l 'config-file' -d 'The configuration file whose cluster and dcs stanzas to use.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl manage proxy"' -l 'dcs' -d 'An etcd endpoint (host:port), instead of the file\'s; repeatable.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl manage proxy" c cluster' -s 'c' -l 'cluster' -d 'The cluster name, instead of the file\'s.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl manage proxy" o output' -s 'o' -l 'output' -d 'table (HARP\'s), json or yaml.' -rfka 'table json yaml'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl manage proxy" version' -l 'version' -d 'Show the version.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl manage proxy" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl unmanage" version' -l 'version' -d 'Show the version.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl unmanage" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_positional "harpctl unmanage" -eq 1' -fa 'proxy' -d 'Unmanage one proxy instance.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl unmanage proxy" config-file f' -s 'f' -l 'config-file' -d 'The configuration file whose cluster and dcs stanzas to use.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl unmanage proxy"' -l 'dcs' -d 'An etcd endpoint (host:port), instead of the file\'s; repeatable.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl unmanage proxy" c cluster' -s 'c' -l 'cluster' -d 'The cluster name, instead of the file\'s.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl unmanage proxy" o output' -s 'o' -l 'output' -d 'table (HARP\'s), json or yaml.' -rfka 'table json yaml'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl unmanage proxy" version' -l 'version' -d 'Show the version.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl unmanage proxy" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl promote" config-file f' -s 'f' -l 'config-file' -d 'The configuration file whose cluster and dcs stanzas to use.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl promote"' -l 'dcs' -d 'An etcd endpoint (host:port), instead of the file\'s; repeatable.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl promote" c cluster' -s 'c' -l 'cluster' -d 'The cluster name, instead of the file\'s.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl promote" o output' -s 'o' -l 'output' -d 'table (HARP\'s), json or yaml.' -rfka 'table json yaml'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl promote" location' -l 'location' -d 'The location; by default the node\'s own.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl promote" ttl' -l 'ttl' -d 'Put the leader key on a lease of this many seconds.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl promote" version' -l 'version' -d 'Show the version.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl promote" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl version" config-file f' -s 'f' -l 'config-file' -d 'The configuration file whose cluster and dcs stanzas to use.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl version"' -l 'dcs' -d 'An etcd endpoint (host:port), instead of the file\'s; repeatable.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl version" c cluster' -s 'c' -l 'cluster' -d 'The cluster name, instead of the file\'s.' -rfka ''
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl version" o output' -s 'o' -l 'output' -d 'table (HARP\'s), json or yaml.' -rfka 'table json yaml'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl version" version' -l 'version' -d 'Show the version.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl version" h help' -s 'h' -l 'help' -d 'Show help information.'
complete -c 'harpctl' -n '__harpctl_should_offer_completions_for_flags_or_options "harpctl help" version' -l 'version' -d 'Show the version.'
